"""notifyd: receives alarm notifications from the bus, emails the reminders, acks them end to end."""
