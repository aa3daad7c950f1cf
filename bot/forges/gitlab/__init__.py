"""GitLab adapter: webhook verification and parsing (sansio), the API client, reporting back as commit statuses and merge request notes."""  # noqa: E501
