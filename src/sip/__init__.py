"""The SIP side: a sans-IO core (messages, transactions, dialogs, digest) under a thin Trio edge."""
