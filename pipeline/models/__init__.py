"""The models: registry, production loading, the test and random profiles, embedding and
background removal. Importing this package imports nothing heavy."""
