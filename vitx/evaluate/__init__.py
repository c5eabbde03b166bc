"""How good is an explanation: faithfulness metrics (and, later, sanity and localisation)."""
