"""The customer-service assistant: FAQ retrieval, department routing, out-of-scope hand-off, chat service."""
