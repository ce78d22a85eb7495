# proposals rules (added by the proposals stage)
