{#- Reactor for salt/beacon/<minion>/kcm_cert/<kind> (cert_expiring, cert_renewed): hand the
    event to the kcm_alert runner, like leader.sls. Certificate events are a few a day, so
    they come here with or without the kcm_alert engine (which batches the Lease events). #}
{%- set parts = tag.split("/") %}
{%- if parts | length == 5 and parts[0] == "salt" and parts[1] == "beacon" and parts[3] == "kcm_cert"
      and parts[4] in ("cert_expiring", "cert_renewed") %}
kcm-alert-handle-cert:
  runner.kcm_alert.handle:
    - args:
      - tag: {{ tag | tojson }}
      - data: {{ data | tojson }}
{%- endif %}
