# report rules (added by the report stage)
