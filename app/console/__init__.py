"""The web console: a page at ``/`` for chatting with the model, managing keys and usage, and,
for admins, users and load. It is a static page and one ES module over the public API."""
