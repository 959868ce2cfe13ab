"""Python imports this at start-up when this folder is on PYTHONPATH: a service process
started so is the upgraded reader of tests/support/contracts_v2.py."""

from tests.support.contracts_v2 import declare_on_the_tasks_topic, install

install()
declare_on_the_tasks_topic()
