"""The bundles shipped with coopnets (models/README.md): package data, found by contract.bundle."""
