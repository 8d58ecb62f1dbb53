"""The vault as an authenticated HTTP service (``/v1``): the one process that holds the HSM
session and the database credentials; people and workers reach it with tokens only."""
