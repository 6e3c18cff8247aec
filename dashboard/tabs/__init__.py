"""One module per tab of the page, each with `layout()`, its pure view functions and
`register(app, ctx)`; `dashboard.page.TABS` lists them in page order."""
