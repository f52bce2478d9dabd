"""`domainssl` commands past pretraining (transfer, embed, infer); ``cli.py`` registers them."""
