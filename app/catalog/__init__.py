"""The Models page: what this deployment offers, at what price, through which APIs."""
