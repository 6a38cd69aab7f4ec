{#- Opt-in (kcm:master:enroll:enabled): a minion that starts is handed to the kcm_enroll
    runner, which highstates it once if it has the control-plane grain. The runner takes
    the id from the tag and checks it against the sender's authenticated id (data.id). #}
{%- if tag.startswith("salt/minion/") and tag.endswith("/start") %}
kcm-enroll-highstate-once:
  runner.kcm_enroll.on_start:
    - args:
      - tag: {{ tag | tojson }}
      - sender: {{ data.get("id") | tojson }}
{%- endif %}
