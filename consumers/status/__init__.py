"""Fleet status: ``wgchain status`` and the API's ``/v1/hosts`` and ``/readyz``."""
