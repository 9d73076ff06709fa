"""The API keys pages (P10, P11): list, create, rotate, revoke and reveal."""
