"""The Kapture page in Airflow's UI (Airflow 3.1+): sync runs and the orders still owed to Kapture."""
