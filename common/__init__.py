"""Code shared by alarmd and notifyd: settings, database, the ENS bus, logging."""
