"""Suite-wide settings (the repository's top level is fixed, so they live here, not in an ini)."""


def pytest_configure(config):
    # Warnings are errors: a leaked socket or a deprecated call fails the suite (httpx's habit).
    config.addinivalue_line("filterwarnings", "error")
