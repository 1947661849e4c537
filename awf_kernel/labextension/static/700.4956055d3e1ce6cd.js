"use strict";(self.rspackChunkawf_kernel=self.rspackChunkawf_kernel||[]).push([[700],{646(a,e,o){var r=o(601),t=o.n(r),n=o(314),i=(o.n(n))()(t());i.push([a.id,`/* awf-kernel: toolbar item, sandbox panel, denial notice. */

.awf-ToolbarItem-button {
  border: 1px solid var(--jp-border-color1);
  border-radius: 3px;
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  padding: 0 6px;
  height: 22px;
  cursor: pointer;
  white-space: nowrap;
}
.awf-ToolbarItem-button::before {
  content: '';
  display: inline-block;
  width: 8px;
  height: 8px;
  margin-right: 5px;
  border-radius: 50%;
  background: var(--jp-success-color1);
}
.awf-ToolbarItem[data-kind='pending'] .awf-ToolbarItem-button::before,
.awf-ToolbarItem[data-kind='error'] .awf-ToolbarItem-button::before { background: var(--jp-warn-color1); }
.awf-ToolbarItem[data-kind='record'] .awf-ToolbarItem-button::before { background: var(--jp-brand-color1); }
.awf-ToolbarItem[data-kind='pending'] .awf-ToolbarItem-button,
.awf-ToolbarItem[data-kind='error'] .awf-ToolbarItem-button {
  border-color: var(--jp-warn-color1);
  color: var(--jp-warn-color1);
}
.awf-ToolbarItem[data-kind='record'] .awf-ToolbarItem-button { border-color: var(--jp-brand-color1); }

.awf-Panel {
  padding: 8px 12px;
  overflow: auto;
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  min-width: 360px;
}
.awf-Panel h2 { font-size: var(--jp-ui-font-size3); margin: 4px 0; }
.awf-Panel h3 { font-size: var(--jp-ui-font-size2); margin: 12px 0 4px; }
.awf-Panel-path { color: var(--jp-ui-font-color2); word-break: break-all; }
.awf-Panel-state { font-weight: bold; margin: 4px 0; }
.awf-Panel-state[data-kind='pending'], .awf-Panel-state[data-kind='error'] { color: var(--jp-warn-color1); }
.awf-Panel-error, .awf-Errors, .awf-Why { color: var(--jp-error-color1); }
.awf-Pending { border-left: 4px solid var(--jp-warn-color1); padding: 4px 8px; margin: 8px 0; }
.awf-List { margin: 2px 0 6px; padding-left: 18px; }
.awf-List li, .awf-Host { font-family: var(--jp-code-font-family); word-break: break-all; }
.awf-Empty, .awf-Hint, .awf-Expanded { color: var(--jp-ui-font-color2); }
.awf-Denials { border-collapse: collapse; }
.awf-Denials td, .awf-Denials th { text-align: left; vertical-align: top; padding: 1px 6px; }
.awf-Panel label { display: block; margin-top: 6px; font-family: var(--jp-code-font-family); }
.awf-Edit { display: block; width: 100%; box-sizing: border-box; font-family: var(--jp-code-font-family); }
.awf-Panel .jp-Button { margin: 6px 0; padding: 4px 10px; height: auto; line-height: 1.3; }
.awf-Status { margin-left: 4px; }
.awf-Allowed { color: var(--jp-success-color1); }

.awf-Notice {
  border-left: 4px solid var(--jp-error-color1);
  padding: 4px 8px;
  text-align: left;
}
.awf-Notice-title { font-weight: bold; }
.awf-Notice-table { border-collapse: collapse; margin-left: 0; }
.awf-Notice-table td, .awf-Notice-table th { text-align: left; vertical-align: top; padding: 2px 8px; }
.awf-Notice .awf-Allow { padding: 1px 8px; cursor: pointer; }
.awf-Panel .jp-Button:disabled, .awf-Notice .jp-Button:disabled { opacity: 0.5; cursor: default; }
`,""]),o.d(e,{},{A:i})},314(a){a.exports=function(a){var e=[];return e.toString=function(){return this.map(function(e){var o="",r=void 0!==e[5];return e[4]&&(o+="@supports (".concat(e[4],") {")),e[2]&&(o+="@media ".concat(e[2]," {")),r&&(o+="@layer".concat(e[5].length>0?" ".concat(e[5]):""," {")),o+=a(e),r&&(o+="}"),e[2]&&(o+="}"),e[4]&&(o+="}"),o}).join("")},e.i=function(a,o,r,t,n){"string"==typeof a&&(a=[[null,a,void 0]]);var i={};if(r)for(var l=0;l<this.length;l++){var c=this[l][0];null!=c&&(i[c]=!0)}for(var p=0;p<a.length;p++){var f=[].concat(a[p]);r&&i[f[0]]||(void 0!==n&&(void 0===f[5]||(f[1]="@layer".concat(f[5].length>0?" ".concat(f[5]):""," {").concat(f[1],"}")),f[5]=n),o&&(f[2]&&(f[1]="@media ".concat(f[2]," {").concat(f[1],"}")),f[2]=o),t&&(f[4]?(f[1]="@supports (".concat(f[4],") {").concat(f[1],"}"),f[4]=t):f[4]="".concat(t)),e.push(f))}},e}},601(a){a.exports=function(a){return a[1]}},72(a){var e=[];function o(a){for(var o=-1,r=0;r<e.length;r++)if(e[r].identifier===a){o=r;break}return o}function r(a,r){for(var t={},n=[],i=0;i<a.length;i++){var l=a[i],c=r.base?l[0]+r.base:l[0],p=t[c]||0,f="".concat(c," ").concat(p);t[c]=p+1;var d=o(f),s={css:l[1],media:l[2],sourceMap:l[3],supports:l[4],layer:l[5]};if(-1!==d)e[d].references++,e[d].updater(s);else{var u=function(a,e){var o=e.domAPI(e);return o.update(a),function(e){e?(e.css!==a.css||e.media!==a.media||e.sourceMap!==a.sourceMap||e.supports!==a.supports||e.layer!==a.layer)&&o.update(a=e):o.remove()}}(s,r);r.byIndex=i,e.splice(i,0,{identifier:f,updater:u,references:1})}n.push(f)}return n}a.exports=function(a,t){var n=r(a=a||[],t=t||{});return function(a){a=a||[];for(var i=0;i<n.length;i++){var l=o(n[i]);e[l].references--}for(var c=r(a,t),p=0;p<n.length;p++){var f=o(n[p]);0===e[f].references&&(e[f].updater(),e.splice(f,1))}n=c}}},659(a){var e={};a.exports=function(a,o){var r=function(a){if(void 0===e[a]){var o=document.querySelector(a);if(window.HTMLIFrameElement&&o instanceof window.HTMLIFrameElement)try{o=o.contentDocument.head}catch(a){o=null}e[a]=o}return e[a]}(a);if(!r)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");r.appendChild(o)}},540(a){a.exports=function(a){var e=document.createElement("style");return a.setAttributes(e,a.attributes),a.insert(e,a.options),e}},56(a,e,o){a.exports=function(a){var e=o.nc;e&&a.setAttribute("nonce",e)}},206(a){a.exports=function(a){if("u"<typeof document)return{update:function(){},remove:function(){}};var e=a.insertStyleElement(a);return{update:function(o){var r,t,n;r="",o.supports&&(r+="@supports (".concat(o.supports,") {")),o.media&&(r+="@media ".concat(o.media," {")),(t=void 0!==o.layer)&&(r+="@layer".concat(o.layer.length>0?" ".concat(o.layer):""," {")),r+=o.css,t&&(r+="}"),o.media&&(r+="}"),o.supports&&(r+="}"),(n=o.sourceMap)&&"u">typeof btoa&&(r+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(n))))," */")),a.styleTagTransform(r,e,a.options)},remove:function(){var a;null===(a=e).parentNode||a.parentNode.removeChild(a)}}}},113(a){a.exports=function(a,e){if(e.styleSheet)e.styleSheet.cssText=a;else{for(;e.firstChild;)e.removeChild(e.firstChild);e.appendChild(document.createTextNode(a))}}},959(a,e,o){var r=o(72),t=o.n(r),n=o(206),i=o.n(n),l=o(659),c=o.n(l),p=o(56),f=o.n(p),d=o(540),s=o.n(d),u=o(113),b=o.n(u),w=o(646),v={};v.styleTagTransform=b(),v.setAttributes=f(),v.insert=c().bind(null,"head"),v.domAPI=i(),v.insertStyleElement=s(),t()(w.A,v),w.A&&w.A.locals&&w.A.locals}}]);