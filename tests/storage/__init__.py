"""Tests of services.storage (a package so test module names may repeat in other test folders)."""
