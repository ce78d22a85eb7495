# discovery rules (added by the discovery stage)
