"""Alchemy's state folders: :mod:`~evstate.alchemy.fs` reads and writes them,
:mod:`~evstate.alchemy.migrate` imports them into evstate and exports scopes back."""
