{#- Reactor for salt/beacon/<minion>/kcm_leader/<kind>: hand the event to the kcm_alert
    runner, which dedupes across masters and talks to Alertmanager. Beacon data is flat
    (data.id is the reporting minion). The guard keeps this SLS inert for any other tag,
    in particular the runner's own follow-ups (kcm/alert/...), should a broader glob ever
    map here. #}
{%- if tag.startswith("salt/beacon/") and "/kcm_leader/" in tag %}
kcm-alert-handle:
  runner.kcm_alert.handle:
    - args:
      - tag: {{ tag | tojson }}
      - data: {{ data | tojson }}
{%- endif %}
