"""The ansatz catalog, installed as ``qpeft.catalog``: one small file per ansatz."""
