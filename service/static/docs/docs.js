// Starts Swagger UI (/docs) or ReDoc (/redoc) on the OpenAPI document of this server, from files this
// server serves (docs/service.md "API documentation"). A file rather than an inline script: the pages'
// Content-Security-Policy runs scripts from this origin only.
//
// The document may need a scan key (XSCREEN_PROTECT_DOCS): a browser sends no Authorization header of its
// own, so on a 401 the page asks for the key, fetches the document with it, and hands it to Swagger UI's
// Authorize, so that "Try it out" sends it too. The key stays in this page's memory: never stored, never
// put in a URL.
(function () {
  "use strict";
  var script = document.currentScript;
  var viewer = script.dataset.viewer;
  var openapiUrl = script.dataset.openapiUrl;
  var styleNonce = script.dataset.styleNonce;
  var form = document.getElementById("key-form");
  var input = document.getElementById("key-input");
  var message = document.getElementById("key-message");
  var target = document.getElementById("api-viewer");

  function say(text) {
    message.textContent = text;
    message.hidden = !text;
  }

  function render(doc, key) {
    if (viewer === "swagger") {
      var ui = SwaggerUIBundle({
        spec: doc,
        domNode: target,
        deepLinking: true,
        layout: "BaseLayout",
        presets: [SwaggerUIBundle.presets.apis],
        validatorUrl: null, // the default asks a public validator service for a badge
        persistAuthorization: false,
        onComplete: function () {
          if (key) {
            ui.preauthorizeApiKey("ApiKey", key);
          }
        },
      });
    } else {
      Redoc.init(doc, { nonce: styleNonce, hideDownloadButton: false }, target);
    }
  }

  function load(key) {
    var headers = key ? { Authorization: "Bearer " + key } : {};
    return fetch(openapiUrl, { headers: headers, credentials: "omit", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          form.hidden = false;
          say(key ? "The service refused this key." : "");
          input.focus();
          return;
        }
        if (!response.ok) {
          throw new Error(openapiUrl + " answered " + response.status);
        }
        return response.json().then(function (doc) {
          form.hidden = true;
          say("");
          render(doc, key);
        });
      })
      .catch(function (error) {
        form.hidden = false;
        say("Could not load the API description: " + error.message);
      });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var key = input.value.trim();
    if (key) {
      load(key);
    }
  });
  load("");
})();
