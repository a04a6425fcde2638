"""Lienthong node: the agent each committee office runs, and the auditor's client."""
