"""The data plane: a transparent, measured reverse proxy for Lemonade's API.

Every request is forwarded byte for byte (hop-by-hop headers aside); observation records
timestamps and keeps a bounded copy of the bytes on the hot path, and parses that copy only
after the response has been delivered.
"""
