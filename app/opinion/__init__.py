"""Financial opinion monitoring: a stream of dated texts → sentiment per watched entity → spike alerts, dashboard."""
