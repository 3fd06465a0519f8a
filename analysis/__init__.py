"""Pure functions over evaluation tables (pandas) and plotly figure builders. No gradio here."""
