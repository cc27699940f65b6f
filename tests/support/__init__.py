"""Test support: the helpers and fixtures every test layer shares, imported as a library.

Test modules import helpers from here and nowhere else in tests/ (no test module imports
another, nor a conftest): pytest may import a test module twice under different names, and a
helper buried in one layer's files drags that layer into another. The shared fixtures live in
`tests.support.fixtures`, which the root conftest loads with `pytest_plugins`, so every test
sees the same fixture names without importing them.
"""
