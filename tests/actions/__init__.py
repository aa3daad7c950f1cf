"""Tests of actions/: the labgate-submit client, and the GitHub Action and GitLab CI template that run it."""
