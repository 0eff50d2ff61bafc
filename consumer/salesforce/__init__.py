"""Salesforce adapter: the HTTP client and its classifier, the writer, SOQL, the mapping check."""
