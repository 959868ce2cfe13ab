"""Python imports this at start-up when this folder is on PYTHONPATH: a service process
started so is the upgraded reader of tests/support/contracts_v2.py."""

from tests.support.contracts_v2 import install

install()
