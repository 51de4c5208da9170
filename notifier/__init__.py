"""notifier: watch things, email a diff when they change."""
