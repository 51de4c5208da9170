-- A state database as notifier 0.1 (schema version 3) wrote it: made by the store.py of
-- commit 8b87f75 through its own API, then dumped. tests/test_migrations.py loads it and opens
-- it with the current code, which must upgrade it in place and keep every row.
PRAGMA user_version = 3;
BEGIN TRANSACTION;
CREATE TABLE digest (
    id INTEGER PRIMARY KEY,
    bucket TEXT NOT NULL,
    due REAL NOT NULL,
    watcher TEXT NOT NULL,
    payload TEXT NOT NULL
);
INSERT INTO "digest" VALUES(1,'{"account": "qq", "bcc": [], "cc": [], "every": 86400.0, "to": ["me@example.com"]}',1764097200.0,'prices','{"name": "prices"}');
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO "meta" VALUES('state_id','dce7e785a8b54a8bbb06f08a5bd51e65');
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    watcher TEXT,
    kind TEXT NOT NULL,
    account TEXT,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    body BLOB NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'held', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL,
    created REAL NOT NULL,
    last_error TEXT,
    claimed_by TEXT,
    claimed_until REAL
);
INSERT INTO "outbox" VALUES(1,'<pending.1@example.com>','prices','change','qq','robot@example.com','["me@example.com", "boss@example.com"]',X'46726F6D3A20726F626F74406578616D706C652E636F6D0D0A546F3A206D65406578616D706C652E636F6D0D0A5375626A6563743A205B6E6F7469666965725D20707269636573206368616E6765640D0A4D6573736167652D49443A203C70656E64696E672E31406578616D706C652E636F6D3E0D0A0D0A707269636520342E30300D0A','pending',1,1764012000.0,1.79608569294777727131e+09,'451 4.3.0 Try again later',NULL,NULL);
INSERT INTO "outbox" VALUES(2,'<dead.1@example.com>','nginx','error','qq','robot@example.com','["gone@example.com"]',X'46726F6D3A20726F626F74406578616D706C652E636F6D0D0A546F3A20676F6E65406578616D706C652E636F6D0D0A5375626A6563743A205B6E6F7469666965725D206E67696E78206973206661696C696E670D0A4D6573736167652D49443A203C646561642E31406578616D706C652E636F6D3E0D0A0D0A62726F6B656E0D0A','dead',1,1764003700.0,1.79608569294777727131e+09,'550 5.1.1 Mailbox unavailable',NULL,NULL);
CREATE TABLE snapshot (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    taken_at REAL NOT NULL,
    content TEXT NOT NULL
);
INSERT INTO "snapshot" VALUES(2,'prices',1764003600.0,'price 3.75 USD
shipping free
');
INSERT INTO "snapshot" VALUES(3,'prices',1764007200.0,'price 3.75 USD
shipping 5 USD
');
INSERT INTO "snapshot" VALUES(4,'prices',1764010800.0,'price 4.00 USD
shipping 5 USD
');
INSERT INTO "snapshot" VALUES(5,'nginx',1764000000.0,'worker_processes 4;
');
CREATE TABLE watcher (
    name TEXT PRIMARY KEY,
    last_check REAL,
    last_change REAL,
    last_error TEXT,
    last_error_at REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    error_alerted_at REAL,
    meta TEXT NOT NULL DEFAULT '{}'
);
INSERT INTO "watcher" VALUES('prices',1764010800.0,1764010800.0,NULL,NULL,0,NULL,'{"etag": "\"abf\""}');
INSERT INTO "watcher" VALUES('nginx',1764003600.0,1764000000.0,'cannot read /etc/nginx/nginx.conf (Permission denied)',1764003600.0,1,NULL,'{}');
CREATE INDEX snapshot_by_name ON snapshot(name, id);
CREATE INDEX outbox_due ON outbox(state, not_before);
CREATE INDEX digest_due ON digest(due);
COMMIT;
