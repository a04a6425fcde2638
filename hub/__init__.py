"""Lienthong hub: the central service that verifies and routes sealed packets."""
