"""Run-time keys and teams: the in-memory directory every process serves from, the admin
actions that change them (the API and `tollway keys` share them), and the key generator."""
