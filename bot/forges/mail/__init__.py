"""E-mail: report mail for series and staging pushes, and the trust a mail identity earns."""
