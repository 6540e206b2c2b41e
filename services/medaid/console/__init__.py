"""The 医保大厅 front-desk web console: staff serve people who cannot use the App (look-up,
bindings, diagnosis, consumption records, family accounts, wallets, 代缴) over the services' gRPC
APIs. `python -m medaid.console`; docs/console.md."""
