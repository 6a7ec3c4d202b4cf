"""Errors meant for the person at the keyboard: one line naming the problem and the fix."""


class UserError(Exception):
    """Bad input from the user (command line, config, files). The CLI prints it on one line, exit status 2."""
