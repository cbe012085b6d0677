"""Development tools beside the product: the provider simulator and the strategy lab.

Imports the product freely; the product never imports it.
"""
