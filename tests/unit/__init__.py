"""A package only so that tests/unit/conftest.py is imported as `unit.conftest` and does not
replace tests/conftest.py as the module `conftest` (which test modules import helpers from)."""
