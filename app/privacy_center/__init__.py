"""The person's privacy center (P50, P53, P55): consents, preference cookies,
what we keep, who looked, and requests to restrict, object, access or rectify."""
