"""CI jobs as submitters: OIDC id-tokens of GitHub Actions and GitLab CI jobs, verified against their
issuer's published keys (keys.py, verify.py), then matched against the operator's rules (policy.py)."""
