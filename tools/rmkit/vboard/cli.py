"""`rmkit vboard` and `rmkit repl`."""


def register(sub):
    pass
