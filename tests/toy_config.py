"""Config file for the toy runtime task, so tests can drive the real `llmimg train` command line."""

from tests.toy_task import toy_config


def get_config(arg=None):
    return toy_config()
