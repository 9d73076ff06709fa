"""The server's entry point (granian --interface asgi asgi:app): /v1/ on the event loop, the portal behind it.

The Flask app is the one wsgi.py builds (so the flask CLI and a WSGI server
still work with wsgi:app); app/relay/asgi.py says what runs where.
"""
from app.relay.asgi import App
from wsgi import app as flask_app

app = App(flask_app)
