"""Test and demo tooling, not product.

Nothing the service runs in production imports this package. It holds the doubles that
stand in for outside services (the Telegram Bot API in `botapi`) so that the tests and
`aiconv demo` exercise the real code over real HTTP on loopback; keeping them here, under
a name that says testing, keeps them out of the product's dependency story.
"""
