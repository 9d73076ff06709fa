"""The usage pages: the signed-in person's own requests, totals and filters (P22, P30)."""
