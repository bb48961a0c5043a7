/*
 * Stands in for Livewire's JavaScript, which cannot be installed here, for the example's
 * components (app/Livewire): it finds each `wire:id` element, registers the component's
 * Echo listeners from its `listeners` effect the way Livewire's Laravel Echo support does
 * (`echo-private:{channel},{event}` → `Echo.private(channel).listen(event, …)`, each event
 * dispatched to the component as a `__dispatch` call of that listener), sends `wire:click`
 * actions, swaps in the HTML the server answers, dispatches the browser events the component
 * dispatched, and offers `Livewire.find(id)` with `get(name)` and `$refresh()`. Nothing else.
 */
(function () {
  "use strict";

  var csrf = document.currentScript.getAttribute("data-csrf");
  var components = new Map();

  function commit(component, method, params) {
    return fetch("/livewire-stand-in/update", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-TOKEN": csrf },
      body: JSON.stringify({ snapshot: component.snapshot, calls: [{ method: method, params: params }] }),
    })
      .then(function (r) {
        if (!r.ok) throw new Error("the component answered " + r.status);
        return r.json();
      })
      .then(function (answer) {
        component.snapshot = answer.snapshot;
        if (answer.html !== null) component.el.innerHTML = answer.html;
        answer.dispatches.forEach(function (d) {
          window.dispatchEvent(new CustomEvent(d.name, { detail: d.params }));
        });
      });
  }

  // `echo-private:runs.42,.refresh.abc` → ["echo-private", "runs.42", ".refresh.abc"], as
  // Livewire splits it (at the first colon and comma).
  function registerEchoListeners(component, listeners) {
    listeners.forEach(function (name) {
      var m = /^echo(?:-(private|presence|notification))?:([^,]+),?(.*)$/.exec(name);
      if (!m) return;
      var type = m[1] || "channel";
      if (type !== "private" && type !== "channel") return console.warn("the stand-in has no " + type + " channels");
      window.Echo[type](m[2]).listen(m[3], function (e) {
        commit(component, "__dispatch", [name, [e]]);
      });
    });
  }

  document.addEventListener("click", function (e) {
    var target = e.target.closest("[wire\\:click]");
    var el = target && target.closest("[wire\\:id]");
    if (!el) return;
    var m = /^(\w+)(?:\((.*)\))?$/.exec(target.getAttribute("wire:click"));
    var params = m[2] ? JSON.parse("[" + m[2].replace(/'/g, '"') + "]") : [];
    commit(components.get(el.getAttribute("wire:id")), m[1], params);
  });

  window.Livewire = {
    find: function (id) {
      var component = components.get(id);
      return component ? component.wire : null;
    },
  };

  document.querySelectorAll("[wire\\:id]").forEach(function (el) {
    var component = { el: el, snapshot: JSON.parse(el.getAttribute("wire:snapshot")) };
    component.wire = {
      get: function (name) {
        return component.snapshot.data[name];
      },
      call: function (method) {
        return commit(component, method, Array.prototype.slice.call(arguments, 1));
      },
      $refresh: function () {
        return commit(component, "$refresh", []);
      },
    };
    components.set(el.getAttribute("wire:id"), component);
    registerEchoListeners(component, JSON.parse(el.getAttribute("wire:effects")).listeners || []);
  });
})();
